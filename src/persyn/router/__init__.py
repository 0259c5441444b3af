"""Per-prompt teacher routing: prompt embeddings -> a router kind (ridge reward regression, Bradley-Terry head)."""

from persyn.router.base import Router, load_router, make_router, register_router, router_kinds
from persyn.router.bt import BTRouter, FitReport, preference_pairs, routed_metrics
from persyn.router.embed import Embedder, EmbeddingCache, backbone_fingerprint, embedder_for, resolve_backbone
from persyn.router.ridge import RidgeReport, RidgeRouter

__all__ = [
    "BTRouter", "Embedder", "EmbeddingCache", "FitReport", "Router", "backbone_fingerprint", "embedder_for",
    "load_router", "make_router", "preference_pairs", "register_router", "resolve_backbone", "RidgeReport",
    "RidgeRouter", "routed_metrics", "router_kinds",
]
