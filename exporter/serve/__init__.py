"""HTTP: where a scrape is answered. Handlers pick bytes the last cycle rendered; nothing here
waits on a source.

    routes.py    /metrics, /healthz, /readyz, /, /api/v1/status and /favicon.ico
    guard.py     what no client may do (methods, paths, bodies, slow readers, too many connections),
                 basic auth and client certificates, counted in kube_gpu_exporter_http_rejected_total
    security.py  TLS that follows its certificate files, client certificate names, basic auth
"""
