"""The tests start the service the way the demo and benchmarks do."""

from victim_service.launch import ROOT, free_port, running_service, service_process, wait_ready

__all__ = ["ROOT", "free_port", "running_service", "service_process", "wait_ready"]
