"""Activities of the ScanWorkflow, one module per group."""
