"""One colour per replay arm, the same in every figure of the project (the DDPM report and the MHN report)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import to_hex

ARM_COLOUR = {"none": "black", "energy_high": "tab:red", "energy_low": "tab:blue", "random": "tab:gray",
              "oracle": "tab:green", "pixel_mass_high": "tab:orange"}


def arm_colours(strategies) -> dict[str, str]:
    """One colour per arm, never two arms alike in a figure: the fixed ARM_COLOUR where it names the arm, then the
    unused colours of tab10 and tab20 for the other arms in sorted order, then evenly spaced turbo colours."""
    names = sorted(set(strategies))
    out = {s: to_hex(ARM_COLOUR[s]) for s in names if s in ARM_COLOUR}
    palette = [to_hex(c) for c in (*plt.get_cmap("tab10").colors, *plt.get_cmap("tab20").colors)]
    spare = [c for c in dict.fromkeys(palette) if c not in out.values()]
    rest = [s for s in names if s not in out]
    if len(rest) > len(spare):
        spare += [to_hex(c) for c in plt.get_cmap("turbo")(np.linspace(0.05, 0.95, len(rest) - len(spare)))]
    out.update(zip(rest, spare))
    return out
