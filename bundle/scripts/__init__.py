"""SimSID/HCASC chest-radiograph anomaly detection: networks, losses, data, outputs and engines.

The bundle configs import this package with ``"$import scripts"``; run them from ``bundle/``
(or with ``bundle/`` on ``sys.path``).
"""
