"""Named DefiNet weights shipped with ase_definet (installed as ``ase_definet.weights``).

Each ``NAME.safetensors`` has a model card ``NAME.md`` beside it.
"""
