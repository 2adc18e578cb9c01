"""medseg-node: a DICOM node beside the scanner that receives series, segments them and sends DICOM SEG back."""
