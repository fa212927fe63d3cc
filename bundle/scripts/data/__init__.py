"""Data in: radiograph readers (``formats``, ``dicom``, ``raster``, ``itk_reader``), the loading transforms
(``transforms``), datalists and folder layouts (``datalist``, ``dataset``) and the built-in synthetic set (``phantom``
draws the radiographs, ``synthetic`` writes the set)."""
