//! Geometry in the 8D space: the spatial index (a k-d tree and Verlet
//! neighbour rows) and what is found with it, the emergent hierarchy
//! (friends-of-friends groups, matched across detections).

pub mod hierarchy;
pub mod spatial;
