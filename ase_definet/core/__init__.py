"""The inference core, below data generation and training: defect specs, matching a
defective structure to its host, the one record of a defect structure
(:class:`~ase_definet.core.structure.DefectStructure`), the built-in hosts, input and
checkpoint validation, the batched prediction loop, uncertainty and the training domain.
It imports only :mod:`ase_definet.graph` and :mod:`ase_definet.model`; the ASE-facing
layer (:mod:`ase_definet.relaxer`, :mod:`ase_definet.batch`) sits on top of it."""
