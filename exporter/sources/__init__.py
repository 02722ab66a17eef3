"""Everything the agent reads: GPUs (NVML or simulated), the kubelet, the API server, procfs."""
