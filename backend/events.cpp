#include "events.h"

#include <cerrno>
#include <chrono>
#include <cstring>
#include <fstream>
#include <stdexcept>

namespace studio {

EventWriter::EventWriter(const std::string & path) : path_(path) {
    // A run killed in the middle of a line leaves it without its newline; the next run's first event must not be
    // glued to it (both would be lost to the reader), so the half line is closed first.
    bool half_line = false;
    if (std::FILE * existing = std::fopen(path.c_str(), "rb")) {
        half_line = std::fseek(existing, -1, SEEK_END) == 0 && std::fgetc(existing) != '\n';
        std::fclose(existing);
    }
    file_ = std::fopen(path.c_str(), "ab");
    if (!file_) throw std::runtime_error("events: cannot open " + path + " for appending (check the run directory's permissions)");
    if (half_line) std::fputc('\n', file_);
}

EventWriter::~EventWriter() {
    if (file_) std::fclose(file_);
}

void EventWriter::write(const std::string & type, nlohmann::json fields) {
    if (!file_) return;
    nlohmann::json event = nlohmann::json::object();
    event["event"] = type;
    event["time"] = std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
    for (auto it = fields.begin(); it != fields.end(); ++it) event[it.key()] = it.value();
    // One write call per line keeps a concurrent reader from seeing interleaved fragments.
    const std::string line = event.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
    if (std::fwrite(line.data(), 1, line.size(), file_) != line.size() || std::fflush(file_) != 0) {
        const int error = errno;
        throw std::runtime_error("events: cannot write to " + path_ + ": " +
                                 (error == ENOSPC ? std::string("no space left on device; free space on that disk") : std::strerror(error)));
    }
}

std::vector<nlohmann::json> EventReader::poll() {
    std::vector<nlohmann::json> events;
    std::ifstream in(path_, std::ios::binary);
    if (!in) return events;
    in.seekg(0, std::ios::end);
    const auto size = (uint64_t) in.tellg();
    if (size < offset_) reset(); // truncated or replaced: read again from the start
    if (size == offset_) return events;
    in.seekg((std::streamoff) offset_);
    std::string chunk(size - offset_, '\0');
    in.read(chunk.data(), (std::streamsize) chunk.size());
    chunk.resize((size_t) in.gcount());
    offset_ += chunk.size();
    partial_ += chunk;

    size_t start = 0;
    for (size_t nl = partial_.find('\n'); nl != std::string::npos; nl = partial_.find('\n', start)) {
        const std::string line = partial_.substr(start, nl - start);
        start = nl + 1;
        if (line.empty()) continue;
        auto parsed = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
        if (parsed.is_discarded() || !parsed.is_object()) { ++skipped_; continue; }
        events.push_back(std::move(parsed));
    }
    partial_.erase(0, start); // keep the half-written tail for the next poll
    return events;
}

void EventReader::reset() {
    offset_ = 0;
    partial_.clear();
    skipped_ = 0;
}

std::vector<nlohmann::json> events_read_all(const std::string & path) {
    EventReader reader(path);
    return reader.poll();
}

} // namespace studio
