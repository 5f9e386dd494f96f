"""pneumo as a DICOM node: the PACS sends radiographs, the findings go back into the study.

- node.py: one received instance -> the same decode, model, guard and decision as /predict, a row
  in the prediction log, and the results to send (results.py: a Structured Report and a Grad-CAM
  Secondary Capture, both in the source study).
- outbox.py: the results wait in the prediction store until a destination (C-STORE and/or
  STOW-RS) has taken them; a destination that is down is retried with backoff, nothing is lost.
- listener.py: `pneumo dicom-listen`, a pynetdicom C-ECHO/C-STORE service.
- pull.py: `pneumo dicom-pull`, studies already in the PACS, found by QIDO-RS, read by WADO-RS.
- send.py: `pneumo dicom-send`, a radiograph file (JPEG, PNG or DICOM) sent by C-STORE.
"""
