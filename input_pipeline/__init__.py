"""Input pipelines for lightnets: image sources, host-side transforms and batching.

`sources` (digits, synthetic, folder:, tfds:), `transforms` (decoding, crops, RandAugment),
`datasets` (grain iterators and their checkpointable state), `photos` (the real photos that ship
inside installed packages, for checks). Batches leave as uint8 pixels; the network's normalisation
is `lightnets.preprocessing`'s, applied on the device.
"""
