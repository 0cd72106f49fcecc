"""What the reference PyTorch implementations report: the targets our networks must hit.

Parameter counts (1000 classes) and MMACs at the reference resolution, copied from
`shared/reference/models.md` (torchvision 0.27, timm 1.0.31, MACs from
`torch.utils.flop_counter`). MobileNetV1 at widths 0.25-0.75 is not registered in timm; its
counts are those of timm 1.0.31's `_gen_mobilenet_v1(channel_multiplier=w)`, which has no MAC figure.
`mobilenet_v1_100_ms` is MindSpore's model zoo network (MindSpore 2.10).
"""

REFERENCE = {
    # name: (reference model, parameters, MMACs or None)
    "mobilenet_v1_025": ("timm _gen_mobilenet_v1(0.25)", 470_072, None),
    "mobilenet_v1_050": ("timm _gen_mobilenet_v1(0.5)", 1_331_592, None),
    "mobilenet_v1_075": ("timm _gen_mobilenet_v1(0.75)", 2_585_560, None),
    "mobilenet_v1_100": ("timm mobilenetv1_100", 4_231_976, 568.7),
    "mobilenet_v1_125": ("timm mobilenetv1_125", 6_270_840, 879.5),
    # MindSpore's model zoo network with class_num=1000 (tests/mindspore_side.py counts 4,233,001
    # trainable parameters at its 1001 classes, test_mindspore checks ours against it); the same
    # layers and output sizes as timm's mobilenetv1_100, hence its MACs.
    "mobilenet_v1_100_ms": ("MindSpore model zoo mobilenet_v1(class_num=1000)", 4_231_976, 568.7),
    "mobilenet_v2_035": ("torchvision mobilenet_v2 width=0.35", 1_677_128, 59.3),
    "mobilenet_v2_050": ("torchvision mobilenet_v2 width=0.5", 1_968_680, 97.1),
    "mobilenet_v2_075": ("torchvision mobilenet_v2 width=0.75", 2_636_424, 209.1),
    "mobilenet_v2_100": ("torchvision mobilenet_v2 width=1.0", 3_504_872, 300.8),
    "mobilenet_v2_140": ("torchvision mobilenet_v2 width=1.4", 6_108_776, 582.2),
    "shufflenet_v2_x0_5": ("torchvision shufflenet_v2_x0_5", 1_366_792, 40.5),
    "shufflenet_v2_x1_0": ("torchvision shufflenet_v2_x1_0", 2_278_604, 144.9),
    "shufflenet_v2_x1_5": ("torchvision shufflenet_v2_x1_5", 3_503_624, 295.8),
    "shufflenet_v2_x2_0": ("torchvision shufflenet_v2_x2_0", 7_393_996, 583.3),
    "efficientnet_v2_s": ("torchvision efficientnet_v2_s", 21_458_488, 8365.6),
    "efficientnet_v2_m": ("torchvision efficientnet_v2_m", 54_139_356, 24582.5),
    "efficientnet_v2_l": ("torchvision efficientnet_v2_l", 118_515_272, 56079.7),
    "efficientnet_v2_b0_tf": ("timm tf_efficientnetv2_b0", 7_139_704, 528.2),
    "efficientnet_v2_b1_tf": ("timm tf_efficientnetv2_b1", 8_141_052, 747.0),
    "efficientnet_v2_b2_tf": ("timm tf_efficientnetv2_b2", 10_096_086, 1043.5),
    "efficientnet_v2_b3_tf": ("timm tf_efficientnetv2_b3", 14_358_406, 1908.0),
    "efficientnet_v2_s_tf": ("timm tf_efficientnetv2_s", 21_458_488, 5307.6),
    "efficientnet_v2_m_tf": ("timm tf_efficientnetv2_m", 54_139_356, 15736.8),
    "efficientnet_v2_l_tf": ("timm tf_efficientnetv2_l", 118_515_272, 35899.4),
    "efficientnet_v2_xl_tf": ("timm tf_efficientnetv2_xl", 208_119_808, 52529.3),
    "efficientnet_v2_rw_t": ("timm efficientnetv2_rw_t", 13_649_388, 1912.9),
    "efficientnet_v2_rw_s": ("timm efficientnetv2_rw_s", 23_941_296, 4862.7),
    "efficientnet_v2_rw_m": ("timm efficientnetv2_rw_m", 53_236_442, 12627.4),
    # Counted with torchvision 0.27.1 and timm 1.0.31 here (2026-12-02; torch.utils.flop_counter).
    "mobilenet_v3_large_100": ("torchvision mobilenet_v3_large", 5_483_032, 216.6),
    "mobilenet_v3_small_100": ("torchvision mobilenet_v3_small", 2_542_856, 56.5),
    "mobilenet_v3_large_100_timm": ("timm mobilenetv3_large_100", 5_483_032, 216.6),
    "mobilenet_v3_small_100_timm": ("timm mobilenetv3_small_100", 2_542_856, 56.5),
}
