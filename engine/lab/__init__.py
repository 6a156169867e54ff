"""The algorithm lab: compare the convolution algorithms on a layer (speed and error against
the float64 reference), tune a model's layers on this machine into a wisdom file, and measure
receptive fields."""
