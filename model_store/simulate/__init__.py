"""A realistic injection-molding plant simulator (three makers, physics-driven process values,
setting-dependent defect mechanisms, daily lots) for tests, demos and benchmarks.

    plant = simulate(SimulationConfig(seed=0))          # ~500k shots, 30 days, 24 machines
    write_plant(plant, Path("out/plant"))               # records, lots, schema, truth/
    later = continue_plant(plant, days=1)               # day 31 of the same plant
    write_plant_dataset(PlantStream(SimulationConfig(days=365, facilities=100, shots=10**8)), Path("out/year"))
                                                        # a year, piece by piece, as a partitioned Parquet dataset
"""
from model_store.simulate.config import SimulationConfig, SimulationConfigError
from model_store.simulate.defects import CAUSES, NONE_LABEL, SENSOR_SPIKE_LABEL
from model_store.simulate.documents import as_documents
from model_store.simulate.makers import MAKERS, plant_schema
from model_store.simulate.plant import PlantDefinition, define_plant
from model_store.simulate.simulator import SimulatedPlant, continue_plant, simulate
from model_store.simulate.stream import PlantStream
from model_store.simulate.writer import write_plant, write_plant_dataset

__all__ = [
    "CAUSES",
    "MAKERS",
    "NONE_LABEL",
    "SENSOR_SPIKE_LABEL",
    "PlantDefinition",
    "PlantStream",
    "SimulatedPlant",
    "SimulationConfig",
    "SimulationConfigError",
    "as_documents",
    "continue_plant",
    "define_plant",
    "plant_schema",
    "simulate",
    "write_plant",
    "write_plant_dataset",
]
