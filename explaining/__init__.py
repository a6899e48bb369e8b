"""Where each AU detector looks: saliency maps of face crops, warped into the face's own frame,
and the lift of each FACS region, for explain.py and predict.py --explain."""
