#include "safetensors.h"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <fcntl.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

namespace studio {

namespace {
[[noreturn]] void bad(const std::string & source, const std::string & what) {
    throw FormatError("safetensors: " + source + ": " + what);
}
} // namespace

uint64_t safetensors_dtype_size(const std::string & dtype, const std::string & source) {
    if (dtype == "F64" || dtype == "I64" || dtype == "U64") return 8;
    if (dtype == "F32" || dtype == "I32" || dtype == "U32") return 4;
    if (dtype == "F16" || dtype == "BF16" || dtype == "I16" || dtype == "U16") return 2;
    if (dtype == "U8" || dtype == "I8" || dtype == "BOOL") return 1;
    bad(source, "unknown dtype \"" + dtype + "\"");
}

std::string safetensors_serialize(const std::map<std::string, SafeTensorView> & tensors,
                                  const std::map<std::string, std::string> & metadata) {
    nlohmann::json header = nlohmann::json::object();
    uint64_t offset = 0;
    for (const auto & [name, t] : tensors) {
        uint64_t expected = safetensors_dtype_size(t.dtype);
        for (auto d : t.shape) expected *= (uint64_t) d;
        if (expected != t.bytes) throw std::invalid_argument("safetensors: tensor " + name + " has " + std::to_string(t.bytes) + " bytes, its shape needs " + std::to_string(expected));
        header[name] = {{"dtype", t.dtype}, {"shape", t.shape}, {"data_offsets", {offset, offset + t.bytes}}};
        offset += t.bytes;
    }
    if (!metadata.empty()) header["__metadata__"] = metadata;
    std::string json = header.dump();
    while ((json.size() + 8) % 8 != 0) json.push_back(' '); // keep the data 8-byte aligned, as the reference writer does
    std::string out;
    out.reserve(8 + json.size() + offset);
    const uint64_t n = json.size();
    for (int i = 0; i < 8; ++i) out.push_back((char) ((n >> (8 * i)) & 0xff));
    out += json;
    for (const auto & [name, t] : tensors) out.append((const char *) t.data, t.bytes);
    return out;
}

SafeTensorFile safetensors_parse(const std::string & bytes, const std::string & source) {
    if (bytes.size() < 8) bad(source, "file is " + std::to_string(bytes.size()) + " bytes, too short for a header (truncated?)");
    uint64_t n = 0;
    for (int i = 0; i < 8; ++i) n |= (uint64_t) (uint8_t) bytes[(size_t) i] << (8 * i);
    if (n > bytes.size() - 8) bad(source, "header length " + std::to_string(n) + " runs past the end of the file (truncated or not safetensors)");
    auto header = nlohmann::json::parse(bytes.begin() + 8, bytes.begin() + 8 + (std::ptrdiff_t) n, nullptr, false);
    if (header.is_discarded() || !header.is_object()) bad(source, "header is not a JSON object (corrupt or not safetensors)");
    const uint64_t data_size = bytes.size() - 8 - n;
    const char * data = bytes.data() + 8 + n;
    SafeTensorFile file;
    for (auto it = header.begin(); it != header.end(); ++it) {
        const auto & entry = it.value();
        if (it.key() == "__metadata__") {
            if (!entry.is_object()) bad(source, "__metadata__ is not an object");
            for (auto m = entry.begin(); m != entry.end(); ++m) {
                if (!m.value().is_string()) bad(source, "metadata value " + m.key() + " is not a string");
                file.metadata[m.key()] = m.value().get<std::string>();
            }
            continue;
        }
        const std::string & name = it.key();
        if (!entry.is_object() || !entry.contains("dtype") || !entry.contains("shape") || !entry.contains("data_offsets") ||
            !entry["dtype"].is_string() || !entry["shape"].is_array() || !entry["data_offsets"].is_array() || entry["data_offsets"].size() != 2) {
            bad(source, "tensor " + name + " has a malformed header entry");
        }
        SafeTensor t;
        t.dtype = entry["dtype"].get<std::string>();
        uint64_t elements = 1;
        for (const auto & d : entry["shape"]) {
            if (!d.is_number_unsigned() && !(d.is_number_integer() && d.get<int64_t>() >= 0)) bad(source, "tensor " + name + " has a negative or non-integer dimension");
            const uint64_t dim = d.get<uint64_t>();
            if (dim > (uint64_t) INT64_MAX) bad(source, "tensor " + name + " has a dimension above 2^63 - 1");
            if (dim != 0 && elements > (UINT64_MAX / dim)) bad(source, "tensor " + name + " shape overflows");
            elements *= dim;
            t.shape.push_back((int64_t) dim);
        }
        const auto & offsets = entry["data_offsets"];
        if (!offsets[0].is_number_unsigned() || !offsets[1].is_number_unsigned()) bad(source, "tensor " + name + " has bad data_offsets");
        const uint64_t begin = offsets[0].get<uint64_t>(), end = offsets[1].get<uint64_t>();
        const uint64_t size = safetensors_dtype_size(t.dtype, source);
        if (elements > UINT64_MAX / size) bad(source, "tensor " + name + " shape overflows");
        if (begin > end || end > data_size) bad(source, "tensor " + name + " data runs past the end of the file (truncated?)");
        if (end - begin != elements * size) bad(source, "tensor " + name + " has " + std::to_string(end - begin) + " bytes, its shape needs " + std::to_string(elements * size));
        t.data.assign(data + begin, data + end);
        file.tensors.emplace(name, std::move(t));
    }
    return file;
}

SafeTensorFile safetensors_read(const std::string & path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw FormatError("safetensors: " + path + ": cannot open the file");
    std::ostringstream buffer;
    buffer << in.rdbuf();
    return safetensors_parse(buffer.str(), path);
}

void folder_sync(const std::string & path) {
    int fd = ::open(path.c_str(), O_RDONLY | O_DIRECTORY);
    if (fd >= 0) {
        ::fsync(fd);
        ::close(fd);
    }
}

namespace {

// The one line a user sees when a write fails. A full disk says so plainly, with the size of what did not fit.
std::string write_error(const std::string & path, int error, size_t bytes) {
    if (error == ENOSPC || error == EDQUOT) {
        char size[32];
        std::snprintf(size, sizeof size, "%.1f MB", (double) bytes / 1e6);
        return "cannot write " + path + " (" + size + "): no space left on device; free space on that disk";
    }
    return "cannot write " + path + ": " + std::strerror(error);
}

} // namespace

void file_write_atomic(const std::string & path, const std::string & bytes) {
    namespace fs = std::filesystem;
    const fs::path target(path);
    const std::string tmp = (target.parent_path() / ("." + target.filename().string() + ".tmp" + std::to_string(::getpid()))).string();
    int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) {
        const int error = errno;
        if (error == ENOSPC || error == EDQUOT) throw std::runtime_error(write_error(path, error, bytes.size()));
        throw std::runtime_error("cannot create " + tmp + ": " + std::strerror(error));
    }
    const char * p = bytes.data();
    size_t left = bytes.size();
    while (left > 0) {
        ssize_t w = ::write(fd, p, left);
        if (w < 0) {
            if (errno == EINTR) continue;
            const int error = errno;
            ::close(fd);
            ::unlink(tmp.c_str());
            throw std::runtime_error(write_error(path, error, bytes.size()));
        }
        p += w;
        left -= (size_t) w;
    }
    // fsync and close report a full disk too (delayed allocation, network file systems).
    int error = ::fsync(fd) != 0 ? errno : 0;
    if (::close(fd) != 0 && error == 0) error = errno;
    if (error != 0) {
        ::unlink(tmp.c_str());
        throw std::runtime_error(write_error(path, error, bytes.size()));
    }
    if (::rename(tmp.c_str(), path.c_str()) != 0) {
        const std::string why = std::strerror(errno);
        ::unlink(tmp.c_str());
        throw std::runtime_error("cannot rename " + tmp + " to " + path + ": " + why);
    }
    folder_sync(target.parent_path().empty() ? "." : target.parent_path().string());
}

} // namespace studio
