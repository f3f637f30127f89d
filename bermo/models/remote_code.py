"""Written next to a saved BERMo checkpoint's config.json as ``bermo_remote_code.py``: the module its ``auto_map``
names, which transformers imports under ``trust_remote_code=True``. It holds no model code, only the installed
bermo's classes, so the checkpoint loads with whatever bermo is installed (``pip install bermo``)."""
from bermo.models.configuration_bermo import BermoConfig
from bermo.models.modeling_bermo import BermoForSequenceClassification, BermoModel

__all__ = ["BermoConfig", "BermoForSequenceClassification", "BermoModel"]
