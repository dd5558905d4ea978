"""The query contract (:mod:`.base`) and the query types every method shares: masked inputs
(:mod:`.masked`) and curve points (:mod:`.curve`). White-box query types live with their methods
(``methods.cam``, ``methods.cam_score``) and derive from :class:`WhiteBoxQuery`."""

from .base import ItemContext, Query, QueryFailure, WhiteBoxQuery
from .curve import CurveQuery
from .masked import BoxQuery, Rise3DQuery, RiseQuery, ScoreQuery

__all__ = [
    "BoxQuery", "CurveQuery", "ItemContext", "Query", "QueryFailure", "Rise3DQuery", "RiseQuery", "ScoreQuery",
    "WhiteBoxQuery",
]
