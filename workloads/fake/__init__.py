"""A fake workload behind the real trial protocol, for fast tests of the driver.

It sleeps instead of computing. Its step time follows the same knob names as unet3d, so search spaces,
pruning and confirmation can be tested in seconds, and it can be told to fail in every way a real trial
can (``fault`` knob).
"""
