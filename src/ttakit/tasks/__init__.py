"""What each task does with its views' outputs: classification, dense maps and keypoints, detection."""
