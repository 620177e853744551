"""The three (fictional) machine makers and how each one names, scales and rounds its fields.

The simulator works internally on *canonical quantities* in SI-ish units (°C, mm, mm/s, MPa, s,
rpm, ton). A maker's controller exports a subset of them under its own names, in its own units
(HANIL: MPa, DAESAN: kgf/cm², SUNGWOO: bar and kN) and at its own resolution. That subset is what
the plant schema lists, so the downstream pipeline sees three genuinely different field sets.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from model_store.schema import PlantSchema, parse_schema

# Canonical set points (one vector per true setting). Zone 1 is the nozzle/front zone, zone 5 the
# feed zone next to the hopper.
SETPOINTS: tuple[str, ...] = (
    "t_zone1", "t_zone2", "t_zone3", "t_zone4", "t_zone5",  # barrel heater set temperatures, °C
    "t_mold",  # mold (coolant) temperature, °C
    "v_inj",  # injection (screw advance) speed, mm/s
    "p_limit",  # injection pressure limit, MPa melt pressure
    "p_hold",  # holding (packing) pressure, MPa
    "t_hold",  # holding time, s
    "t_cool",  # cooling time, s
    "s_dose",  # shot size / dosing stroke, mm
    "n_screw",  # screw speed while plasticizing, rpm
    "p_back",  # back pressure while plasticizing, MPa
    "f_clamp",  # clamp force, ton
)
SP: dict[str, int] = {name: i for i, name in enumerate(SETPOINTS)}

# Canonical measured (actual) values per shot.
ACTUALS: tuple[str, ...] = (
    "a_zone1", "a_zone2", "a_zone3",  # barrel zone thermocouples, °C
    "a_melt",  # melt temperature probe at the nozzle, °C
    "a_mold",  # mold temperature, °C
    "a_p_peak",  # peak injection pressure, MPa
    "a_p_vp",  # pressure at velocity/pressure switch-over, MPa
    "a_p_hold",  # holding pressure reached, MPa
    "a_v_max",  # maximum injection speed reached, mm/s
    "a_t_fill",  # fill (injection) time, s
    "a_t_plast",  # plasticizing (dosing/recovery) time, s
    "a_t_cycle",  # cycle time, s
    "a_cushion",  # cushion (melt left in front of the screw after holding), mm
    "a_f_clamp",  # clamp force measured by the tie-bar sensors, ton
    "a_n_screw",  # screw speed reached, rpm
    "a_p_back",  # back pressure reached, MPa
    "a_oil",  # hydraulic oil temperature, °C
)

MPA_TO_KGF = 10.1972  # kgf/cm² per MPa (Korean hydraulic controllers still show kgf/cm²)
MPA_TO_BAR = 10.0
TON_TO_KN = 9.80665


@dataclass(frozen=True)
class Field:
    """One exported column: the maker's own name for a canonical quantity."""

    name: str
    quantity: str
    scale: float = 1.0  # canonical unit -> the maker's unit
    decimals: int = 1  # the resolution its controller records

    @property
    def step(self) -> float:
        """Smallest change the controller can record, in canonical units (an operator's nudge)."""
        return 10.0 ** (-self.decimals) / self.scale


@dataclass(frozen=True)
class MakerSpec:
    name: str
    settings: tuple[Field, ...]
    production: tuple[Field, ...]

    @property
    def setting_quantities(self) -> frozenset[str]:
        return frozenset(f.quantity for f in self.settings)


# HANIL: lower-case snake names, MPa, five barrel zones, records melt temperature and clamp force.
HANIL = MakerSpec(
    "HANIL",
    settings=(
        Field("set_barrel_temp_1", "t_zone1", decimals=0),
        Field("set_barrel_temp_2", "t_zone2", decimals=0),
        Field("set_barrel_temp_3", "t_zone3", decimals=0),
        Field("set_barrel_temp_4", "t_zone4", decimals=0),
        Field("set_barrel_temp_5", "t_zone5", decimals=0),
        Field("set_mold_temp", "t_mold", decimals=0),
        Field("set_inj_speed", "v_inj", decimals=0),
        Field("set_inj_pressure", "p_limit", decimals=1),
        Field("set_hold_pressure", "p_hold", decimals=1),
        Field("set_cooling_time", "t_cool", decimals=1),
    ),
    production=(
        Field("act_barrel_temp_1", "a_zone1"),
        Field("act_barrel_temp_2", "a_zone2"),
        Field("melt_temp", "a_melt"),
        Field("act_mold_temp", "a_mold"),
        Field("peak_inj_pressure", "a_p_peak"),
        Field("switch_over_pressure", "a_p_vp"),
        Field("fill_time", "a_t_fill", decimals=2),
        Field("plasticizing_time", "a_t_plast", decimals=2),
        Field("cycle_time", "a_t_cycle", decimals=2),
        Field("cushion", "a_cushion", decimals=2),
        Field("clamp_force", "a_f_clamp"),
        Field("screw_rpm_act", "a_n_screw", decimals=0),
    ),
)

# DAESAN: SV_ (set value) / PV_ (present value) upper-case names, kgf/cm², three zones, no melt
# probe but hydraulic oil temperature; its settings include the plasticizing recipe.
DAESAN = MakerSpec(
    "DAESAN",
    settings=(
        Field("SV_NOZZLE_TEMP", "t_zone1", decimals=0),
        Field("SV_ZONE2_TEMP", "t_zone2", decimals=0),
        Field("SV_ZONE3_TEMP", "t_zone3", decimals=0),
        Field("SV_MOLD_TEMP", "t_mold", decimals=0),
        Field("SV_INJ_VELO", "v_inj", decimals=0),
        Field("SV_HOLD_PRS", "p_hold", scale=MPA_TO_KGF, decimals=0),
        Field("SV_HOLD_TM", "t_hold", decimals=1),
        Field("SV_SCREW_RPM", "n_screw", decimals=0),
        Field("SV_BACK_PRS", "p_back", scale=MPA_TO_KGF, decimals=0),
    ),
    production=(
        Field("PV_NOZZLE_TEMP", "a_zone1"),
        Field("PV_ZONE2_TEMP", "a_zone2"),
        Field("PV_MOLD_TEMP", "a_mold"),
        Field("PV_INJ_PEAK_PRS", "a_p_peak", scale=MPA_TO_KGF, decimals=0),
        Field("PV_VP_PRS", "a_p_vp", scale=MPA_TO_KGF, decimals=0),
        Field("PV_HOLD_PRS", "a_p_hold", scale=MPA_TO_KGF, decimals=0),
        Field("PV_FILL_TM", "a_t_fill", decimals=2),
        Field("PV_PLAST_TM", "a_t_plast", decimals=2),
        Field("PV_CYCLE_TM", "a_t_cycle", decimals=2),
        Field("PV_CUSHION", "a_cushion", decimals=2),
        Field("PV_BACK_PRS", "a_p_back", scale=MPA_TO_KGF, decimals=0),
        Field("PV_OIL_TEMP", "a_oil"),
    ),
)

# SUNGWOO: CamelCase names, bar and kN (European-style controller), three zones, shot size set.
SUNGWOO = MakerSpec(
    "SUNGWOO",
    settings=(
        Field("TempZone1Set", "t_zone1", decimals=0),
        Field("TempZone2Set", "t_zone2", decimals=0),
        Field("TempZone3Set", "t_zone3", decimals=0),
        Field("MoldTempSet", "t_mold", decimals=0),
        Field("InjSpeedSet", "v_inj", decimals=1),
        Field("HoldPressSet", "p_hold", scale=MPA_TO_BAR, decimals=0),
        Field("HoldTimeSet", "t_hold", decimals=1),
        Field("ShotSizeSet", "s_dose", decimals=1),
        Field("CoolTimeSet", "t_cool", decimals=1),
    ),
    production=(
        Field("MeltTempAct", "a_melt"),
        Field("MoldTempAct", "a_mold"),
        Field("InjPressPeak", "a_p_peak", scale=MPA_TO_BAR, decimals=0),
        Field("SwitchOverPress", "a_p_vp", scale=MPA_TO_BAR, decimals=0),
        Field("HoldPressAct", "a_p_hold", scale=MPA_TO_BAR, decimals=0),
        Field("MaxInjSpeedAct", "a_v_max", decimals=1),
        Field("InjTime", "a_t_fill", decimals=3),
        Field("DosingTime", "a_t_plast", decimals=2),
        Field("CycleTime", "a_t_cycle", decimals=2),
        Field("CushionAct", "a_cushion", decimals=2),
        Field("ClampForceAct", "a_f_clamp", scale=TON_TO_KN, decimals=0),
        Field("ScrewRpmAct", "a_n_screw", decimals=0),
    ),
)

MAKERS: dict[str, MakerSpec] = {m.name: m for m in (HANIL, DAESAN, SUNGWOO)}
MAKER_NAMES: tuple[str, ...] = tuple(MAKERS)

# Common raw columns of the export, in the MES's order.
SHOT_ID, TIMESTAMP, MAKER_COL, FACILITY_COL, ITEM_COL, LOT_DATE_COL = (
    "shot_id", "timestamp", "maker", "facility", "item", "lot_date",
)


def schema_mapping() -> dict[str, Any]:
    """The plant schema (as YAML would hold it) that maps the simulated export."""
    return {
        "name": "moldwatch-simulated-plant",
        "record_id": SHOT_ID,
        "timestamp": TIMESTAMP,
        "maker": {"column": MAKER_COL},
        "facility": FACILITY_COL,
        "item": ITEM_COL,
        "lot_date": LOT_DATE_COL,
        "makers": {
            m.name: {"settings": [f.name for f in m.settings], "production": [f.name for f in m.production]}
            for m in MAKERS.values()
        },
    }


def plant_schema() -> PlantSchema:
    return parse_schema(schema_mapping(), source="simulated-plant")
