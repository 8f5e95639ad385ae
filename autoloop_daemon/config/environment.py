"""`AUTOLOOPD_*` environment overrides: matching names case-insensitively to the schema,
coercing strings to the strict models' types, and binding a settings class to one file."""

from __future__ import annotations

import types
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import (
    BaseModel,
    TypeAdapter,
    ValidationError,
)
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)
from pydantic_settings.sources.utils import parse_env_vars

from autoloop_daemon.config.settings import ENV_PREFIX, _FileSettings


def _inner_type(annotation: Any) -> Any:
    """`X | None` -> X, `Annotated[X, ...]` -> X."""
    while True:
        if get_origin(annotation) is Annotated:
            annotation = get_args(annotation)[0]
        elif get_origin(annotation) in (Union, types.UnionType):
            annotation = next(a for a in get_args(annotation) if a is not type(None))
        else:
            return annotation


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The model a field holds (or holds a list of), if any."""
    inner = _inner_type(annotation)
    if get_origin(inner) is list:
        inner = _inner_type(get_args(inner)[0])
    return inner if isinstance(inner, type) and issubclass(inner, BaseModel) else None


def _coerce_env(value: Any, annotation: Any) -> Any:
    """Convert environment strings to the int/float/bool the strict models expect."""
    inner = _inner_type(annotation)
    model = _model_of(inner)
    if isinstance(value, dict) and model is not None:
        fields = model.model_fields
        return {
            k: _coerce_env(v, fields[k].annotation) if k in fields else v for k, v in value.items()
        }
    if isinstance(value, dict) and get_origin(inner) is dict:
        return {k: _coerce_env(v, get_args(inner)[1]) for k, v in value.items()}
    if isinstance(value, str) and inner in (int, float, bool):
        try:
            return TypeAdapter(inner).validate_python(value)
        except ValidationError:
            return value  # the strict validation then reports it with its key path
    return value


def _normalise_env_name(name: str) -> str:
    """`AUTOLOOPD_DEFAULTS__ENV__LLM_MODEL` -> `AUTOLOOPD_defaults__env__LLM_MODEL`."""
    parts = name[len(ENV_PREFIX) :].split("__")
    model: type[BaseModel] | None = _FileSettings
    for i, part in enumerate(parts):
        if model is None:
            break  # inside a free-form table (env, weights): keep the user's case
        parts[i] = part.lower()
        field = model.model_fields.get(parts[i])
        model = _model_of(field.annotation) if field is not None else None
    return ENV_PREFIX + "__".join(parts)


def _config_env(environ: Mapping[str, str]) -> dict[str, str]:
    return {
        _normalise_env_name(k): v for k, v in environ.items() if k.upper().startswith(ENV_PREFIX)
    }


class _EnvSource(EnvSettingsSource):
    """The environment source, reading a given mapping instead of `os.environ`."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._environ = _config_env(environ)
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return parse_env_vars(
            self._environ, self.case_sensitive, self.env_ignore_empty, self.env_parse_none_str
        )

    def __call__(self) -> dict[str, Any]:
        values: dict[str, Any] = _coerce_env(super().__call__(), self.settings_cls)
        return values


def _bind(path: Path, environ: Mapping[str, str]) -> type[_FileSettings]:
    class _Bound(_FileSettings):
        model_config = SettingsConfigDict(toml_file=path)

        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            return (
                init_settings,
                _EnvSource(settings_cls, environ),
                TomlConfigSettingsSource(settings_cls),
            )

    return _Bound
