"""A fourth, independent synthetic chest-radiograph benchmark: a statistical shape model with CR/DR detectors.

Write it with (from the repository root)::

    python -m benchmarks.fourth_set --output DIR [--seed 0]

It exists to confirm, on images no setting was chosen on, a choice made on the built-in, second and third
sets, so every model in it differs in kind from theirs (implicit or analytic 2-D shapes, a 3-D voxel phantom):

- anatomy (:mod:`.shape_model`, :mod:`.anatomy`): a statistical shape model, 50 landmarks (lungs, heart,
  mediastinum) with 14 orthonormal modes of variation, Catmull-Rom splines through them; habitus from
  adolescent to large adult; the heart scaled to a drawn cardiothoracic ratio; tilt and in-plane rotation;
- thickness (:mod:`.layers`): rounded volumes from outlines by distance transforms; ribs and clavicles as paired
  cortical edges over a faint marrow band; vertebrae with end plates, pedicles, spinous processes;
- lung texture (:mod:`.texture`, :mod:`.vessels`): lattice-noise fBm; vessels grown by space colonisation
  with Murray's-law radii;
- foreign objects in normal and abnormal images alike (:mod:`.devices`): central lines, nasogastric tubes,
  sternotomy wires, pacemakers with leads, ECG electrodes, buttons, necklaces;
- detector (:mod:`.acquisition`): CR plate (row jitter, plate structure, dust, scratches) or DR panel (grid
  stripes, read-out seam), filtered quantum plus electronic noise, collimation;
- processing (:mod:`.processing`): multiscale contrast equalisation or a histogram-equalisation lookup table,
  shutters white or black, burned-in view/time text;
- findings (:mod:`.findings`): nodule (spiculated or multiple), consolidation (lobar zone, fissure, air
  bronchograms), effusion (meniscus or subpulmonic), pneumothorax (apical or lateral, pleural line),
  cardiomegaly (by ratio) and a reticular interstitial pattern; the mask is where the line integral changed;
- files (:mod:`.dataset`): the second set's writer :func:`benchmarks.second_set.files.write_image_set`.
"""
