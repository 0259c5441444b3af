"""Per-prompt teacher routing: prompt embeddings -> a router kind (ridge reward regression, Bradley-Terry head)."""

from persyn.router.base import (
    Router,
    RouterReport,
    load_router,
    make_router,
    register_router,
    report_from_dict,
    router_kinds,
)
from persyn.router.bt import BTRouter, FitReport, preference_pairs, routed_metrics
from persyn.router.embed import Embedder, EmbeddingCache, backbone_fingerprint, embedder_for, resolve_backbone
from persyn.router.ridge import RidgeReport, RidgeRouter

__all__ = [
    "BTRouter", "Embedder", "EmbeddingCache", "FitReport", "Router", "backbone_fingerprint", "embedder_for",
    "load_router", "make_router", "preference_pairs", "register_router", "resolve_backbone", "RidgeReport",
    "RidgeRouter", "RouterReport", "report_from_dict", "routed_metrics", "router_kinds",
]
