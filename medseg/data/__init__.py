"""Data: DICOM decoding, indexing, splitting, augmentation and the LightningDataModule."""
