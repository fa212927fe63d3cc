"""A third, independent synthetic chest-radiograph benchmark: a 3-D voxel thorax projected to a radiograph.

Write it with (from the repository root)::

    python -m benchmarks.third_set --output DIR [--seed 0]

It exists to confirm, on images no setting was chosen on, what was chosen on the built-in set and the second
set. Unlike both (which paint 2-D attenuation maps) it builds a 3-D phantom and projects it:

- anatomy (:mod:`.anatomy`): implicit 3-D shapes: body, tapered elliptic rib cage, lungs, heart ellipsoid on
  the left dome, aorta, airways, vertebrae, ribs on sloping elliptic paths, clavicles, scapulae, gastric bubble;
- vessels (:mod:`.vessels`): 3-D trees from the hila, projected analytically as thin tubes;
- geometry (:mod:`.geometry`): divergent beam, PA or AP portable, patient rotation and shift;
- findings (:mod:`.findings`): drawn in 3-D; the mask is where the finding changes the line integral;
- acquisition (:mod:`.acquisition`): Beer-Lambert exposure, scatter, noise, blur, two-band edge enhancement,
  S-curve lookup table, ECG electrodes and leads, side markers;
- rendering (:mod:`.render`) and files (:mod:`.dataset`, writers from :mod:`benchmarks.second_set.files`):
  the second set's layout and datalist contract.
"""
