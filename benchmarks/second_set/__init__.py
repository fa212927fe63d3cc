"""A second, independent synthetic chest-radiograph benchmark that no bundle setting is chosen on.

Write it with (from the repository root)::

    python -m benchmarks.second_set --output DIR [--seed 0]

It is a different generator from the bundle's built-in set (``bundle/scripts/synthetic.py``), not a reseed:

- anatomy (:mod:`.anatomy`): lung fields bounded by power-law lateral borders with a wobble, a mediastinum with
  aortic knob and a superellipse heart on the medial side, two-parabola hemidiaphragms; tube-profile posterior
  and anterior rib arcs, S-shaped clavicles, a vertebral column; breast shadows and a gastric bubble;
- texture (:mod:`.texture`): random binary vessel trees from the hila fading to the periphery, ``1/f**beta``
  parenchymal noise;
- acquisition (:mod:`.render`): photon counts with scatter, anti-scatter grid lines, collimator shutters,
  quantum noise, detector blur, log transform, window / gamma / brightness; rotation up to 5 degrees and
  patient size from the anatomy;
- findings with pixel masks (:mod:`.findings`): nodules, consolidation, effusion (meniscus, blunted angle),
  pneumothorax (pleural line, no markings beyond), cardiomegaly, lobar collapse;
- files (:mod:`.files`, :mod:`.dataset`): 8-bit PNG and 12-16 bit DICOM (MONOCHROME2 and MONOCHROME1 with
  rescale and window tags), ZhangLab folders plus ``datalist.json`` with ``label``, ``kind`` and ``mask``.
"""
