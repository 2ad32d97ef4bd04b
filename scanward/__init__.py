"""scanward: durable security-scan orchestration on Temporal and Kubernetes."""
