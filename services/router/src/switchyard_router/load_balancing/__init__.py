"""Load balancing: which endpoint each attempt goes to (``picker``), the affinity keys
that keep related requests together (``affinity``) and the consistent-hash ring they
are placed on (``hash_ring``).
"""
