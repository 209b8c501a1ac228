"""Traffic scenes: procedural and loaded road maps, dense valid scenes, tokens, data sets, rendering.

- :mod:`.roads`: procedural road networks (:func:`generate_road_maps`) → :class:`RoadMap`.
- :mod:`.lanelet2`, :mod:`.mesh`, :mod:`.carla`: real maps (lanelet2 ``.osm``, road meshes, CARLA towns).
- :mod:`.scenes`: scene generator (:func:`generate_scenes`), valid by the traffic oracle.
- :mod:`.tokens`: scene frame, normalised per-vehicle tokens and map crops for the scene transformer.
- :mod:`.dataset`: data sets written once and memory-mapped (:class:`TrafficSceneDataset`).
- :mod:`.render`: drawing scenes coloured by verdict.
"""

from .carla import carla_maps_from_wheel, fetch_carla_maps
from .dataset import TrafficSceneDataset, load_road_maps, save_road_maps, write_traffic_dataset
from .lanelet2 import lanelet2_road_map, parse_lanelet2
from .mesh import load_road_mesh, mesh_drivable_map
from .render import render_scene, save_scene_grid
from .roads import ROAD_KINDS, RoadMap, RoadNetworkConfig, generate_road_map, generate_road_maps
from .scenes import (
    DEFAULT_VEHICLE_CLASSES,
    SceneConfig,
    TrafficScenes,
    VehicleClass,
    check_scenes,
    generate_scenes,
    sample_vehicle_sizes,
)
from .tokens import TOKEN_DIM, TokenNormalisation, crop_maps, scenes_to_tokens, tokens_to_scenes

__all__ = [
    "DEFAULT_VEHICLE_CLASSES",
    "ROAD_KINDS",
    "TOKEN_DIM",
    "RoadMap",
    "RoadNetworkConfig",
    "SceneConfig",
    "TokenNormalisation",
    "TrafficSceneDataset",
    "TrafficScenes",
    "VehicleClass",
    "carla_maps_from_wheel",
    "check_scenes",
    "crop_maps",
    "fetch_carla_maps",
    "generate_road_map",
    "generate_road_maps",
    "generate_scenes",
    "lanelet2_road_map",
    "load_road_maps",
    "load_road_mesh",
    "mesh_drivable_map",
    "parse_lanelet2",
    "render_scene",
    "sample_vehicle_sizes",
    "save_road_maps",
    "save_scene_grid",
    "scenes_to_tokens",
    "tokens_to_scenes",
    "write_traffic_dataset",
]
