"""Training: the pipeline behind train.py, the LightningModule, tracking, sweeps and callbacks."""
