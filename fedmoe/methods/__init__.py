"""Federated methods; importing this package registers the built-in ones (see ``fedmoe.methods.base``)."""

from fedmoe.methods import fedit, fftmoe, flame, flexlora, flora, flux, flux_baselines, hetlora  # noqa: F401
from fedmoe.methods.base import Client, MethodSpec, Server, available_methods, get_method, register

__all__ = ["Client", "MethodSpec", "Server", "available_methods", "get_method", "register"]
