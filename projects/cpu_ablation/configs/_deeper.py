# Helper of r34_*.py (not a row): turn the demo's ResNet-18 stages (2 BasicBlocks each, whatever
# their widths) into the ResNet-34 layout (3, 4, 6, 3 blocks), widths unchanged.
RESNET34_BLOCKS = [3, 4, 6, 3]


def deepen(stages):
    """Set ``num_blocks`` / ``stride_per_block`` of four ``ResNet.make_stage`` LazyCalls."""
    for stage, blocks in zip(stages, RESNET34_BLOCKS):
        stage.stride_per_block = [stage.stride_per_block[0]] + [1] * (blocks - 1)
        stage.num_blocks = blocks
