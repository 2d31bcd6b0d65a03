"""The local cloud (DESIGN.md section 6). Stands apart from the product: imports nothing of trainctl's."""

from sandbox.server import Sandbox

__all__ = ["Sandbox"]
