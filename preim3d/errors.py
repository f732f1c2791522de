"""Exceptions a user can act on. Each message says what was wrong, where, and what to do."""


class Preim3DError(Exception):
    """Base class of every error preim3d raises on purpose."""


class WeightsError(Preim3DError, ValueError):
    """A weights file or bundle is missing, unreadable, unsafe or of the wrong architecture."""


class InputImageError(Preim3DError, ValueError):
    """A photo could not be read or used."""


class InputVideoError(Preim3DError, ValueError):
    """A video could not be read or used (not a video, no video track, too long or too large)."""


class NoFaceError(InputImageError):
    """No face was found in a photo."""


class FaceTooSmallError(InputImageError):
    """The face found in a photo is too small to give a useful crop."""


class InvalidValueError(Preim3DError, ValueError):
    """A value a user gave (strength, angle, frame count, resolution ...) is not a number or out of its range.

    The limits and their reasons are listed in `preim3d.validation`.
    """


class NoSuchFaceError(InvalidValueError, IndexError):
    """A face number or face_index beyond the faces found in a photo."""


class UnknownAttributeError(Preim3DError, KeyError):
    """An editing attribute name that the direction bank does not know."""

    def __str__(self):  # KeyError would print the message with quotes around it
        return str(self.args[0]) if self.args else ""


class WeightsNotFoundError(WeightsError, FileNotFoundError):
    """No weights where preim3d looked: the message names the places and the command that fetches them."""


class DownloadError(Preim3DError, OSError):
    """A download failed, was interrupted, or gave a file that is not the expected one."""


class LatentFileError(Preim3DError, ValueError):
    """A latent file (.npz / .safetensors of W+ codes) is missing, unreadable or of the wrong shape."""


class Preim3DWarning(UserWarning):
    """Base class of the warnings preim3d gives: the result is made, but not quite as asked."""


class MeshLevelWarning(Preim3DWarning):
    """A mesh was cut at a level taken from the density, which never reaches the official level."""
