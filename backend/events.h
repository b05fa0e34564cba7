// events.jsonl: the run's history, one JSON object per line (architecture.md, "The run directory is the contract").
// The writer appends and flushes whole lines; the reader tolerates a half-written last line. No LibTorch, no Qt:
// the engine writes with it and the desktop studio reads with it.
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace studio {

/// Appends events to a run's events.jsonl. Every event gets "event" (its type) and "time" (Unix seconds).
class EventWriter {
public:
    EventWriter() = default;
    explicit EventWriter(const std::string & path);
    ~EventWriter();
    EventWriter(const EventWriter &) = delete;
    EventWriter & operator=(const EventWriter &) = delete;

    /// Writes {"event": type, "time": now, ...fields} as one line and flushes it to the OS.
    void write(const std::string & type, nlohmann::json fields = nlohmann::json::object());
    bool is_open() const { return file_ != nullptr; }
    const std::string & path() const { return path_; }

private:
    std::FILE * file_ = nullptr;
    std::string path_;
};

/// Follows an events.jsonl that may still be growing: each poll returns the complete lines added since the last one.
class EventReader {
public:
    explicit EventReader(std::string path) : path_(std::move(path)) {}

    /// New complete events since the last call. Lines that are not valid JSON objects are skipped and counted.
    std::vector<nlohmann::json> poll();
    int64_t skipped_lines() const { return skipped_; }
    /// Start again from the beginning (e.g. the file was replaced).
    void reset();

private:
    std::string path_;
    uint64_t offset_ = 0;
    std::string partial_;
    int64_t skipped_ = 0;
};

/// Reads a whole events file at once (for tools and tests).
std::vector<nlohmann::json> events_read_all(const std::string & path);

} // namespace studio
