"""``pydicom_seg`` for MONAI Label, provided by ``pydicom-seg-rb`` (its numpy-2 / pydicom-3 fork).

MONAI Label imports ``pydicom_seg`` when its server starts (``monailabel/datastore/utils/convert.py``, DICOM SEG
conversion). The ``pydicom-seg`` release it declares pins numpy < 2 and imports a module that pydicom 3 removed,
so it cannot live beside this bundle's pydicom 3; ``pydicom-seg-rb`` is the same library under the module name
``pydicom_seg_rb``. This package re-exports it under the name MONAI Label imports.
"""

from pydicom_seg_rb import *  # noqa: F401,F403
from pydicom_seg_rb import reader, template, writer  # noqa: F401
