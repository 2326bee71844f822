from fvcore.common.registry import Registry

from .config import ConfigValueError


class NamedRegistry(Registry):
    """An fvcore Registry that can also register an object under a name of its own."""

    def register_as(self, name):
        def deco(obj):
            self._do_register(name, obj)
            return obj

        return deco

    def get_by_config(self, key, name):
        """Return the object registered as `name`, read from config `key`; list the choices if unknown."""
        if name not in self:
            names = ", ".join(repr(n) for n, _ in sorted(self))
            raise ConfigValueError(
                f"{key} = {name!r} is not registered in retina_plugin.{self._name}_REGISTRY. "
                f"Registered: {names}. To add your own, register a class in that registry in a "
                f"module imported before the model is built."
            )
        return self.get(name)
