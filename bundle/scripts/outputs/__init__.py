"""Results out: the anomaly map as NIfTI (``nifti``), the heatmap overlay (``overlay``, encoded by ``png``), the
DICOM Secondary Capture (``dicom_sc``), the inference writers (``writers``) and the evaluation pictures (``plots``)."""
