"""The seed recipe's fast path: the same training, one compiled program per epoch, fewer
kernels per step.

At batch 4 the seed recipe is 12,500 strictly sequential steps an epoch of ~54 MFLOP each:
on a GPU the time goes to launching the step's ~70 kernels, not to arithmetic. This path
keeps the recipe (model, loss, SGD with momentum, dropout, per-epoch shuffle, the same
random stream) and cuts the launches: `step` splits the network into its convolutional part
and its fully connected head, whose whole forward, backward and update can be two Pallas
kernels (`pallas_head`), and the convolutional part four (`pallas_convs`), which read the
batch and draw the dropout mask themselves; `epoch` runs an epoch as one compiled loop,
drawing the epoch's order inside the same program. `jaxcifar.train` stays the reference:
after 100 steps both give the same parameters (tests/test_fused.py).
"""
