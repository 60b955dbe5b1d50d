"""The isensee2017 3D U-Net (Keras 3): network, instance normalization, Dice loss and FLOP count."""
