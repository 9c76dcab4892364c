"""Where jobs run: the seam (:mod:`.base`) and one subpackage per backend.

``local`` runs jobs in this machine's executor processes; a cluster backend (``slurm``)
is a sibling package implementing the same :class:`~.base.Backend` protocol.
"""
