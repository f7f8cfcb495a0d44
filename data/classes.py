"""Canonical class order (AffectNet's) and the class lists of the registered datasets."""

AFFECTNET8_CLASSES = ("Neutral", "Happy", "Sad", "Surprise", "Fear", "Disgust", "Anger", "Contempt")
BASIC7_CLASSES = AFFECTNET8_CLASSES[:7]

# Asymmetric-noise map of the issue tracker (flip to the most similar class), in canonical indices.
ASYMMETRIC_FLIP = {
    6: 5,  # Anger -> Disgust
    5: 6,  # Disgust -> Anger
    4: 3,  # Fear -> Surprise
    1: 0,  # Happy -> Neutral
    2: 0,  # Sad -> Neutral
    3: 6,  # Surprise -> Anger
    0: 2,  # Neutral -> Sad
    7: 0,  # Contempt -> Neutral
}

# RAF-DB's 1-based labels (Surprise, Fear, Disgust, Happiness, Sadness, Anger, Neutral) -> canonical index.
RAF_TO_CANONICAL = {1: 3, 2: 4, 3: 5, 4: 1, 5: 2, 6: 6, 7: 0}
