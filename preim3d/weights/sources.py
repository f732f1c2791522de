"""Where the official pretrained files come from: one table, their licences and how each file is checked.

| role      | local name (in the downloads folder)   | source                                              |
|-----------|----------------------------------------|-----------------------------------------------------|
| generator | eg3d_G_ema.pkl (default)               | Google Drive 1tFfynggbcITiKF_iLBcFutBSMCScBPSa       |
|           | ffhq512-128.pkl                        | NVIDIA NGC, eg3d/versions/1/files/ffhq512-128.pkl   |
|           | ffhqrebalanced512-128.pkl              | NVIDIA NGC, .../ffhqrebalanced512-128.pkl           |
| encoder   | preim3d_ffhq.pt                        | Google Drive 1_s-ywlNPNGg1_ZyzataHt6Y4qS0Pp4ce       |
| direction | directions/<Attribute>.pt (39 files)   | GitHub mybabyyh/Preim3D,                            |
|           |                                        | editings/interfacegan_directions/inversion          |

The default generator is PREIM3D's copy of EG3D (`eg3d_G_ema.pkl`): the encoder was trained against
it, and converting the encoder checks that the generator's latent average matches the one the
checkpoint stores. The NGC files are NVIDIA's own releases of EG3D.

Checks. The 39 direction files are pinned to a commit of the PREIM3D repository, and their exact
sizes and SHA-256 digests are known. NGC and Google Drive publish no sizes or checksums for the
three large files, so for them preim3d checks what it can: the length the server announces, the
file's first bytes (a torch zip archive or a pickle, never an HTML page), a lower bound on the size
(the float32 parameters alone: 126 MB for the generator, 190 MB for the encoder), and then the
conversion reads and validates every tensor.

Base URLs can be changed (a mirror, or a local server in tests) with the environment variables
PREIM3D_NGC_URL, PREIM3D_DRIVE_URL and PREIM3D_GITHUB_URL, or per call.

This module is plain data and imports nothing heavy: the command line reads it before torch loads.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import quote, urlencode

DEFAULT_BASE_URLS = {
    "ngc": "https://api.ngc.nvidia.com/v2/models/nvidia/research/eg3d/versions/1/files",
    # The direct-download host; drive.google.com/uc answers big files with an HTML confirmation page.
    "drive": "https://drive.usercontent.google.com/download",
    "github": "https://raw.githubusercontent.com/mybabyyh/Preim3D",
}
BASE_URL_ENV = {"ngc": "PREIM3D_NGC_URL", "drive": "PREIM3D_DRIVE_URL", "github": "PREIM3D_GITHUB_URL"}
PREIM3D_COMMIT = "6f68ad61463a97090c9469e5bf964c39b2934ccb"  # branch main of mybabyyh/Preim3D, Sept 2023
DIRECTIONS_PATH = "editings/interfacegan_directions/inversion"

LICENCES = {
    "eg3d": (
        "EG3D generator weights: NVIDIA Source Code License for EG3D "
        "(https://github.com/NVlabs/eg3d/blob/main/LICENSE.txt). Non-commercial use only: research or "
        "evaluation purposes; PREIM3D's copy of the generator carries the same terms."
    ),
    "preim3d": (
        "PREIM3D encoder weights: published with the MIT-licensed PREIM3D repository "
        "(https://github.com/mybabyyh/Preim3D), but trained on FFHQ (CC BY-NC-SA 4.0) against the "
        "non-commercial EG3D generator: use them for non-commercial purposes only."
    ),
    "mit": "PREIM3D editing directions: MIT License (https://github.com/mybabyyh/Preim3D/blob/main/LICENSE).",
}

ZIP_HEADER = b"PK\x03\x04"  # torch.save files (torch >= 1.6)
PICKLE_HEADER = b"\x80"  # pickle protocol 2+, also torch's legacy format
MB = 1_000_000


@dataclass(frozen=True)
class OfficialFile:
    """One official file: where it comes from, where it goes, and what it must look like.

    `remote` is the file name on NGC, the file id on Google Drive, or the path in the GitHub
    repository. `size` and `sha256` are given when known exactly; `min_size` is a lower bound
    for the others. `headers`: accepted first bytes of the file.
    """

    role: str  # "generator", "encoder" or "direction"
    filename: str  # path relative to the downloads folder
    host: str  # "ngc", "drive" or "github"
    remote: str
    licence: str  # key of LICENCES
    headers: tuple[bytes, ...]
    size: int | None = None
    min_size: int = 1
    sha256: str | None = None

    def url(self, base_urls: dict | None = None) -> str:
        """The download URL, on the base URL given, else the environment's, else the official one."""
        base = base_url(self.host, base_urls)
        if self.host == "drive":
            # confirm=t skips the "cannot scan this file for viruses" page of files over ~100 MB
            return f"{base}?{urlencode({'id': self.remote, 'export': 'download', 'confirm': 't'})}"
        if self.host == "github":
            return f"{base}/{PREIM3D_COMMIT}/{quote(self.remote)}"
        return f"{base}/{quote(self.remote)}"

    @property
    def page(self) -> str:
        """Where a person can fetch the file by hand (a browser page or the official URL)."""
        if self.host == "drive":
            return f"https://drive.google.com/file/d/{self.remote}/view"
        return self.url({})


def base_url(host: str, base_urls: dict | None = None) -> str:
    """Base URL of a host: `base_urls[host]`, else $PREIM3D_<HOST>_URL, else the official one."""
    if base_urls and base_urls.get(host):
        return base_urls[host].rstrip("/")
    return (os.environ.get(BASE_URL_ENV[host]) or DEFAULT_BASE_URLS[host]).rstrip("/")


_GENERATOR_MIN = 100 * MB
GENERATORS = {
    "preim3d": OfficialFile(
        "generator",
        "eg3d_G_ema.pkl",
        "drive",
        "1tFfynggbcITiKF_iLBcFutBSMCScBPSa",
        "eg3d",
        (ZIP_HEADER,),
        min_size=_GENERATOR_MIN,
    ),
    "ngc": OfficialFile(
        "generator",
        "ffhq512-128.pkl",
        "ngc",
        "ffhq512-128.pkl",
        "eg3d",
        (PICKLE_HEADER,),
        min_size=_GENERATOR_MIN,
    ),
    "ngc-rebalanced": OfficialFile(
        "generator",
        "ffhqrebalanced512-128.pkl",
        "ngc",
        "ffhqrebalanced512-128.pkl",
        "eg3d",
        (PICKLE_HEADER,),
        min_size=_GENERATOR_MIN,
    ),
}
ENCODER = OfficialFile(
    "encoder",
    "preim3d_ffhq.pt",
    "drive",
    "1_s-ywlNPNGg1_ZyzataHt6Y4qS0Pp4ce",
    "preim3d",
    (ZIP_HEADER, PICKLE_HEADER),
    min_size=150 * MB,
)

# name -> (size in bytes, sha256) of the files at PREIM3D_COMMIT: the 40 CelebA attributes but Blurry.
_DIRECTION_FILES = {
    "5_o_Clock_Shadow": (29446, "3e4cc1f0a0a92277de00605a4d5a918ebcae6b61abc697e7232bc7faf9307dba"),
    "Arched_Eyebrows": (29443, "0e5f7cce7cdab7f8a88e774c0218f8e29ab9d5ea11e104ec0e93f51ef1d038f8"),
    "Attractive": (29428, "1e4c4608a4bd9f2d07c68b33bafecf8ce9e537b1edd733e922da8cb6a34e3aac"),
    "Bags_Under_Eyes": (29443, "a3a6471a2a19faba617b5408a28a0925f2a220a7c5850aac04fca493bf1da7c7"),
    "Bald": (29346, "7ffd79b5ce2caff0972b6531466d84e0c81377be480ece9270e5132068bbcb2b"),
    "Bangs": (29349, "5864eaaf81687f198649588db367cb6bcf926a55785a45862dc80cfc1f5e15f2"),
    "Big_Lips": (29422, "74c36d476edf8e4ebac1cdbc29eb0418d01b5986348dbef5ef540c4dd93e0754"),
    "Big_Nose": (29422, "bac237c28483a2492614cbd129e592edc591e9e3a16972407b4e6e5a72c5f65b"),
    "Black_Hair": (29428, "89f82bb152d5dcfb37a045c875b10b9e24da75f7b91e2f4c28778d150ca234a5"),
    "Blond_Hair": (29428, "3545c383cdaf60e36a38c1a14d8aedbcad9c5f6d199044953863e80e42587337"),
    "Brown_Hair": (29428, "7e3ff94ccb54f749ee946b6d54d9772e5b5da0e561d8c725b72c653b4b0bf56b"),
    "Bushy_Eyebrows": (29440, "4f6cc2e8172e42c7503f1aa7069e9051b74d0fd4eb32af995d358efcc1de0753"),
    "Chubby": (29352, "86841cd2d9603f17b067bd9f3a70576d47c0cf0caa5ad96c93b7435852f0d07f"),
    "Double_Chin": (29431, "2324c850671a3f038b76adfd6c223b90ef79b4a01160bb86a4b01a116929215a"),
    "Eyeglasses": (29428, "971744d7c287f3f06a88ba82fa4370f3819af996dfce7610e6446add74e6c13c"),
    "Goatee": (29352, "f811cc40495631ec495e7c43b12ca8eb80985681e36b1172c644372111d50dc2"),
    "Gray_Hair": (29425, "0ef4464689869a00c33e3cc18a81f1da345662ad2dab9e986c17d15c4929d013"),
    "Heavy_Makeup": (29434, "8b019d7d078f0956189762c929db77e936b53a8131493ee5527cc7e2ed91ba2d"),
    "High_Cheekbones": (29443, "2d86979372320a4c78cc18675cf842c71dfe3bfd160951b9e2c8cc5ea7b1f5b8"),
    "Male": (29346, "1c6194daeaedd4b83b7d430be31ebd1f6d237f02d6402317bb27b6b437183ebe"),
    "Mouth_Slightly_Open": (29455, "099b94aa003cc072dbc7761ae6d8fc6e9fef80c1b55d7868673ca16750eb182b"),
    "Mustache": (29422, "7d6831ccff1d204fe60983adffcf4cf7f7760aa21904a0dba92c46b6b9ff6a8a"),
    "Narrow_Eyes": (29431, "218ee2278eb638ee3dd1df523e44afe47c131b1d786456f618fa65eed8c7f13c"),
    "No_Beard": (29422, "28280c64cf4fcdf7e329f65cf258589568bc20ddd8b7658a2745702c53ea6f56"),
    "Oval_Face": (29425, "ec5b9299e27359cbb62c15d559cb502fb27bff559256fa932c5b91d590e2381a"),
    "Pale_Skin": (29425, "45110a35acca802225fb9a78e1d4af5412c700fdbee4318b3996348cbb13039e"),
    "Pointy_Nose": (29431, "b290bc0d3fc06c5a1ef6624c94faf3d40928a9ac1ec1cd7345a5a9404d2000ed"),
    "Receding_Hairline": (29449, "43af3e88c10573a26b2e87883191b3e33c7c59fd0166aaa19766d258984e5a59"),
    "Rosy_Cheeks": (29431, "dbefd12f5b92b44dae6f46d28f80f82fa705642d5c5caa66f69ad2716147f4b9"),
    "Sideburns": (29425, "8ec2814f947980d5511d4548f2994d65a09ca34d03873a24db53e6179b120c64"),
    "Smiling": (29419, "0172060e176feb0edbfe621bb6ed19cbfbc5efea61f5fd1034201e1a63d645c0"),
    "Straight_Hair": (29437, "42de158d78b0b39d52b92a7a3d29618f12a707d3bed449003bb46211bde8cd1e"),
    "Wavy_Hair": (29425, "116595380829c624010806c805ca44091b124a9a627ae68d7e81ccd5f6d82eab"),
    "Wearing_Earrings": (29446, "411a06cc11291cc7d8a58b33d8db8cf9b53ecaeab3673eb445b08d8f21b20094"),
    "Wearing_Hat": (29431, "fac5cd88e1027f79dab1092c2a0ea1c6d441f1bc699f47ac893b564aaa382c2c"),
    "Wearing_Lipstick": (29446, "af9820cc85132ee30ca58269ce54792e69a90e5a7981aa47d0f1c1b9ba09be74"),
    "Wearing_Necklace": (29446, "383a3c80f252f2b0d5d86b4f724aa5c88265a075bfa07d0374e91c41c3fc5b84"),
    "Wearing_Necktie": (29443, "9540ec7b1b5de37941e2d11b1bc22616fcddcefdd10422fd5f984f1b6d4e36b5"),
    "Young": (29349, "81267d548cba22d955583946f9d8949a38df09330fcdd6f87fff7247f85d6c48"),
}
DIRECTIONS_FOLDER = "directions"
DIRECTIONS = tuple(
    OfficialFile(
        "direction",
        f"{DIRECTIONS_FOLDER}/{name}.pt",
        "github",
        f"{DIRECTIONS_PATH}/{name}.pt",
        "mit",
        (ZIP_HEADER,),
        size=size,
        min_size=size,
        sha256=sha256,
    )
    for name, (size, sha256) in _DIRECTION_FILES.items()
)


def official_files(generator: str = "preim3d") -> list[OfficialFile]:
    """Every file `preim3d download` fetches, smallest first: 39 directions, the encoder, the generator."""
    if generator not in GENERATORS:
        raise ValueError(f"Unknown generator source {generator!r}; choose one of {', '.join(GENERATORS)}.")
    return [*DIRECTIONS, ENCODER, GENERATORS[generator]]


def licence_notice(files) -> str:
    """The licences of `files`, one paragraph each, to show before anything is downloaded."""
    keys = list(dict.fromkeys(f.licence for f in files))
    return "\n".join(f"* {LICENCES[key]}" for key in keys)
