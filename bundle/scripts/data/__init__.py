"""Data in: radiograph readers (``formats``, ``dicom``, ``raster``), the loading transforms (``transforms``),
datalists and folder layouts (``datalist``, ``dataset``) and the built-in synthetic set (``synthetic``)."""
