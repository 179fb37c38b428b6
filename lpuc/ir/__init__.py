"""Intermediate representations: the Graph IR (whole tensors) and the Tiled IR (tiles and tile ops)."""

from lpuc.ir.graph import LPUC_DOMAIN, Graph, Node, Value, constant_value

__all__ = ["LPUC_DOMAIN", "Graph", "Node", "Value", "constant_value"]
