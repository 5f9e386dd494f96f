"""The BentoML diagnostic service of pneumo (service.py) and its HTTP front (api.py, inputs.py)."""
