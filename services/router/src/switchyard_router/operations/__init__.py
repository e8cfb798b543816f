"""What operators ask the router: its view of every endpoint (``admin``:
RouterAdminService), models and adapters loaded through it (``model_admin``:
ModelAdminService, forwarded) and every route's models (``model_listing``: ListModels).
"""
