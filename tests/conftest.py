"""Shared test setup. Each fake lives in its own module, registered here as a pytest plugin."""

pytest_plugins = ["fakenvml", "fakekubelet", "fakekubeapi"]
