"""Faces in photos and videos: found from landmark files or by dlib, read frame by frame,
predicted by a run's models (the ensemble) and drawn."""
