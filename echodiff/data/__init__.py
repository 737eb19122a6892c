"""EchoNet-Dynamic data: the video reader, the dataset, clips and the decoded-video cache."""

from echodiff.data.echonet import (
    ANATOMY_FRAMES,
    DatasetError,
    CLIP_STARTS,
    SHORT_VIDEOS,
    DiffusionClips,
    EchoNetDynamic,
    channel_stats,
    disc_volume,
    read_filelist,
    read_tracings,
    trace_mask,
    tracing_efs,
)
from echodiff.data.video import CacheSpaceError, VideoCache, VideoError, read_video, write_video

__all__ = [
    "ANATOMY_FRAMES", "CLIP_STARTS", "CacheSpaceError", "DatasetError", "DiffusionClips", "EchoNetDynamic", "SHORT_VIDEOS", "VideoCache", "VideoError", "channel_stats",
    "disc_volume", "read_filelist", "read_tracings", "read_video", "trace_mask", "tracing_efs",
    "write_video",
]
